"""Helpers shared by the test tiers: throwaway real services (etcd, ...) and their controls."""
