"""A local stand-in for the MetaStudio list API, for the demo, for trying configs, and for tests."""
