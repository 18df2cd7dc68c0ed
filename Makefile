# The README's two commands: `make demo` (sets everything up and runs the live demo, as root) and
# `make test` (lint, type-check and the whole suite). `make demo-clean` undoes the demo.
.PHONY: demo demo-clean test

demo:
	scripts/demo

demo-clean:
	scripts/demo-clean

test:
	scripts/test
