"""Caregivers («aidants»): help given by one account to another, within limits and for a time."""
