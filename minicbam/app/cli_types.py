"""Argument types of the ``minicbam`` command line: checked numbers with argparse messages."""

import argparse
import math


def _number(kind, low, strict, what):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < low or (strict and value == low) or math.isnan(value):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}")
        return value

    return parse


positive_int = _number(int, 0, True, "a positive integer")
non_negative_int = _number(int, 0, False, "an integer >= 0")
positive_float = _number(float, 0.0, True, "a positive number")
non_negative_float = _number(float, 0.0, False, "a number >= 0")
