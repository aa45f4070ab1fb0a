"""kmsemu/client"""
