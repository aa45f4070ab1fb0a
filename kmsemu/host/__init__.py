"""kmsemu/host"""
