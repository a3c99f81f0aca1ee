// loop: prints "tick N" once a second until it is killed.
#include <stdio.h>
#include <unistd.h>

int main(void) {
    for (unsigned long n = 0;; n++) {
        printf("tick %lu\n", n);
        fflush(stdout);
        sleep(1);
    }
}
