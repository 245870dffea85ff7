# One-command set-up for the venv route (no ROS install on the machine).
#   make demo   set up if needed, then run the demo graph
#   make test   set up if needed, then run the test suite
# Each step re-runs only when its inputs changed, so a second run is quick.

PYTHON ?= python3
VENV   ?= .venv
BUILD  ?= build
PY     := $(abspath $(VENV))/bin/python
PREFIX := $(abspath $(VENV))
SITE   := $(PREFIX)/lib/python3.11/site-packages

# Every process started from here talks DDS on loopback only.
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export AMENT_PREFIX_PATH := $(PREFIX)
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp

.PHONY: setup demo test bench clean

setup: $(VENV)/.stamp-package

# 1. The venv and the pinned dependencies (ROS 2 wheels, torch CPU, transformers, ...).
$(VENV)/.stamp-deps: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24" "setuptools>=70" wheel
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

# 2. msg/ -> generated Python/C message code, installed into the venv prefix together
#    with package.xml, launch/ and config/ (the package share directory).
$(VENV)/.stamp-msgs: $(VENV)/.stamp-deps CMakeLists.txt package.xml $(wildcard cmake/*.cmake msg/*.msg launch/* config/*)
	PATH=$(PREFIX)/bin:$$PATH cmake -S . -B $(BUILD) -DCMAKE_INSTALL_PREFIX=$(PREFIX) \
	  -DKI_VLA_INSTALL_PYTHON=OFF -DPython3_EXECUTABLE=$(PY) -DBUILD_TESTING=OFF > $(BUILD).log 2>&1 \
	  || (cat $(BUILD).log; exit 1)
	cmake --build $(BUILD) -j2 >> $(BUILD).log 2>&1 || (tail -50 $(BUILD).log; exit 1)
	@# The share directory mirrors launch/ and config/ exactly (install never deletes files).
	rm -rf $(PREFIX)/share/ki_vla_ros/launch $(PREFIX)/share/ki_vla_ros/config
	cmake --install $(BUILD) >> $(BUILD).log 2>&1 || (tail -50 $(BUILD).log; exit 1)
	@# rosidl also writes ki_vla_ros-*.egg-info listing the generated files; pip would take
	@# it for an older install of this package and delete the messages when installing -e.
	rm -rf $(SITE)/ki_vla_ros-*.egg-info
	touch $@

# 3. This package, editable, and the ki-vla command. compat mode puts the repo root on
#    sys.path, which the package's extend_path() needs to join the source tree with the
#    generated messages in site-packages.
$(VENV)/.stamp-package: $(VENV)/.stamp-msgs setup.py
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e . --config-settings editable_mode=compat
	$(PY) -c "from ki_vla_ros.msg import ActionChunk, Subtask"
	touch $@

demo: setup
	$(VENV)/bin/ki-vla demo

test: setup
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/bench_model.py

clean:
	rm -rf $(VENV) $(BUILD) $(BUILD).log
