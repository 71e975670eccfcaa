"""stagetrace.demo"""
