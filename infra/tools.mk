# Tooling for charts and infrastructure checks, installed into .tools/ (issue 4 fills this in).
.PHONY: tools
tools:
	@true
