"""Where sandboxes run: the `Runtime` protocol (`base`) and its implementations (`docker`)."""
