/* Served by the fake CPU in tests/integration/test_gdb.py: never executed, only its memory image,
   its symbols and its instruction addresses are used (gdb reads the DWARF). No loops that depend on
   flags: the fake follows calls, returns and unconditional jumps only. */
volatile int counter = 5;
int ticks[2];

void bump(void) {
    counter = counter + 1;
}

void vp1_main(void) {
    ticks[1] = 7;
    for (;;) {
    }
}

int main(void) {
    bump();
    bump();
    bump();
    return 0;
}
