"""Demo steps: every module here registers one or more steps with
``llmguard.cli.demo_runner.register_step`` (one small function per verb). Add a file to add a row."""
