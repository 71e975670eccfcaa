"""stagetrace.collector"""
