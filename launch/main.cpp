// launch/main.cpp: entry point of build/switchyard (replaced by the full command dispatcher).
#include <cstdio>
int main() { std::puts("switchyard"); return 0; }
