# The ROS 2 wheels on PyPI export `<pkg>::<pkg>__rosidl_generator_py` targets whose
# INTERFACE_INCLUDE_DIRECTORIES name the Python and NumPy include directories of the
# manylinux machine that built them (/opt/python/cp311-cp311/...). CMake refuses to
# generate against non-existent paths, so after all find_package() calls we replace
# every include directory that does not exist on this machine and looks like a Python
# or NumPy include with ours. On a normal ROS 2 install nothing matches and this is a
# no-op.
function(ki_vla_fix_wheel_include_dirs)
  find_package(Python3 REQUIRED COMPONENTS Interpreter Development.Module NumPy)
  get_property(_targets DIRECTORY PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_fixed "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(NOT EXISTS "${_dir}" AND _dir MATCHES "numpy")
        list(APPEND _fixed ${Python3_NumPy_INCLUDE_DIRS})
        set(_changed TRUE)
      elseif(NOT EXISTS "${_dir}" AND _dir MATCHES "include/python3")
        list(APPEND _fixed ${Python3_INCLUDE_DIRS})
        set(_changed TRUE)
      else()
        list(APPEND _fixed "${_dir}")
      endif()
    endforeach()
    if(_changed)
      list(REMOVE_DUPLICATES _fixed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_fixed}")
    endif()
  endforeach()
endfunction()
