"""Pure agent logic shared by several boxes; it talks to the world only through ports."""
