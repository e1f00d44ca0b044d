"""Shared fixtures. Factory fixtures create a thing and clean it up."""
