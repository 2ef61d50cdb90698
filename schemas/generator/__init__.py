"""schemas/generator"""
