"""Model kinds: what differs between a classifier and a detector, each in its own module (`registry.KINDS`)."""
