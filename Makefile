# Two commands for a new user: `make demo` (the main job on two local QEMU test hosts)
# and `make test` (every test and quality gate; installs what it needs).
.PHONY: test demo e2e bootstrap collection clean

test:
	bash scripts/test.sh

e2e:
	bash scripts/bootstrap.sh && bash scripts/install-collection.sh && bash tests/testbed/e2e.sh

demo:
	bash scripts/demo.sh

bootstrap:
	bash scripts/bootstrap.sh

collection:
	bash scripts/bootstrap.sh && bash scripts/install-collection.sh

clean:
	rm -rf .cache .venv
