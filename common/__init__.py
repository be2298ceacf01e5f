"""What both sides of the wire share: Keras rules, placement, dedup, malloc."""
