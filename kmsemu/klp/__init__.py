"""kmsemu/klp"""
