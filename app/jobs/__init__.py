"""The Redis protocol between the web app and the workers, both sides: the only code that touches the streams."""
