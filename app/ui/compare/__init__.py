"""The Quantize & Compare page: make variants of a model, then measure what each one gave up."""
