"""segfuse.models"""
