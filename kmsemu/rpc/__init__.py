"""kmsemu/rpc"""
