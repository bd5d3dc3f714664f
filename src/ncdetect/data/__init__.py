"""Corpora, manifests, audio decoding and front-ends."""
