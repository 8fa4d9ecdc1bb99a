"""repotune"""
