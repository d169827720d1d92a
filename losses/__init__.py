"""segfuse.losses"""
