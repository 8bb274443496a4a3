"""What the example servers share: key files, deterministic values, page layout, serving."""
