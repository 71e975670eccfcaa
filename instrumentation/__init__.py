"""stagetrace.instrumentation"""
