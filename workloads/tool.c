// tool: runs the steps given as arguments, in order, then exits 0:
//   print TEXT        a line on stdout        eprint TEXT   a line on stderr
//   sleep SECONDS     sleeps                  write PATH TEXT  writes TEXT to the file PATH
//   exit CODE         exits with CODE         trap          executes `unreachable`
// e.g. `tool print starting sleep 2 write /dev/termination-log bye exit 3`.
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char *next(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        fprintf(stderr, "tool: %s needs an argument\n", argv[*i]);
        exit(2);
    }
    return argv[++*i];
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        const char *step = argv[i];
        if (!strcmp(step, "print")) {
            printf("%s\n", next(argc, argv, &i));
            fflush(stdout);
        } else if (!strcmp(step, "eprint")) {
            fprintf(stderr, "%s\n", next(argc, argv, &i));
        } else if (!strcmp(step, "sleep")) {
            sleep((unsigned)atoi(next(argc, argv, &i)));
        } else if (!strcmp(step, "write")) {
            const char *path = next(argc, argv, &i);
            const char *text = next(argc, argv, &i);
            FILE *f = fopen(path, "w");
            if (!f || fputs(text, f) < 0 || fclose(f)) {
                perror(path);
                return 1;
            }
        } else if (!strcmp(step, "exit")) {
            return atoi(next(argc, argv, &i));
        } else if (!strcmp(step, "trap")) {
            __builtin_trap();
        } else {
            fprintf(stderr, "tool: unknown step %s\n", step);
            return 2;
        }
    }
    return 0;
}
