"""Verification tools: boot images and check them from the inside."""
