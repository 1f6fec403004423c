// Anchor translation unit of the precompiled header (see tests/CMakeLists.txt).
