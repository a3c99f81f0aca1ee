// exit: writes a line to stderr and exits with the code given as its first argument
// (default 3).
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    int code = argc > 1 ? atoi(argv[1]) : 3;
    fprintf(stderr, "exiting with code %d\n", code);
    return code;
}
