"""Shim of ``miles.backends``: the training utilities Miles hook files import (see training_utils)."""
