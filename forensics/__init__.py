"""stagetrace.forensics"""
