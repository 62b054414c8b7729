"""Load tests: Locust users that behave like cameras and uploaders, and a runner that reports them."""
