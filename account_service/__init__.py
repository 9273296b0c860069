"""Reserved for its issue; see docs/ and the open issues."""
