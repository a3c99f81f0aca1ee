// tool: runs the steps given as arguments, in order, then exits 0:
//   print TEXT        a line on stdout        eprint TEXT   a line on stderr
//   sleep SECONDS     sleeps                  write PATH TEXT  writes TEXT to the file PATH
//   exit CODE         exits with CODE         trap          executes `unreachable`
// and, for the volume and environment tests, steps that report instead of failing, one
// line each, so a test reads what the module could and could not do from its log:
//   cat PATH          "cat PATH: CONTENT" (newlines as \n) or "cat PATH: error: REASON"
//   ls DIR            "ls DIR: NAME NAME ..." sorted, or "ls DIR: error: REASON"
//   try-write PATH TEXT  "try-write PATH: ok" or "try-write PATH: error: REASON"
//   symlink TARGET LINK  "symlink LINK: ok" or "symlink LINK: error: REASON"
//   env               "env NAME=VALUE" for every variable, sorted
//   fill PATH MIB     writes up to MIB MiB to PATH: "fill PATH: N bytes, ok" or
//                     "fill PATH: N bytes, REASON" (e.g. a full disk)
//   flood MIB         writes MIB MiB of numbered 100-byte lines to stdout, as fast as it can
//   burn SECONDS      computes on the CPU for SECONDS of wall time (0: forever)
//   alloc MIB         mallocs MIB blocks of 1 MiB and touches every byte, as programs do,
//                     then keeps them: "alloc: N MiB" every 16 MiB and at the end, or
//                     "alloc: malloc failed after N MiB" (and goes on to the next step)
// e.g. `tool print starting sleep 2 write /dev/termination-log bye exit 3`.
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

/* The allocator the component model's canonical ABI calls into (as modules built by
 * wit-bindgen and the usual toolchains export it): made a component, the preview 1
 * adapter takes its own memory from here instead of growing the linear memory behind
 * malloc's back. Unused as a plain preview 1 module. */
__attribute__((export_name("cabi_realloc"))) void *cabi_realloc(void *ptr, size_t old_size,
                                                                 size_t align, size_t new_size) {
    (void)old_size;
    if (new_size == 0) return (void *)align;
    void *p = realloc(ptr, new_size);
    if (!p) abort();
    return p;
}

static int by_name(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void cat(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        printf("cat %s: error: %s\n", path, strerror(errno));
        return;
    }
    printf("cat %s: ", path);
    int c;
    while ((c = fgetc(f)) != EOF) {
        if (c == '\n') {
            fputs("\\n", stdout);
        } else {
            putchar(c);
        }
    }
    if (ferror(f)) {
        printf(" error: %s", strerror(errno));
    }
    putchar('\n');
    fclose(f);
}

static void ls(const char *path) {
    DIR *d = opendir(path);
    if (!d) {
        printf("ls %s: error: %s\n", path, strerror(errno));
        return;
    }
    char *names[1024];
    size_t n = 0;
    struct dirent *e;
    while ((e = readdir(d)) && n < 1024) {
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) {
            names[n++] = strdup(e->d_name);
        }
    }
    closedir(d);
    qsort(names, n, sizeof names[0], by_name);
    printf("ls %s:", path);
    for (size_t i = 0; i < n; i++) {
        printf(" %s", names[i]);
        free(names[i]);
    }
    putchar('\n');
}

static void try_write(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (!f || fputs(text, f) < 0 || fclose(f)) {
        printf("try-write %s: error: %s\n", path, strerror(errno));
        return;
    }
    printf("try-write %s: ok\n", path);
}

/* Writes up to `mib` MiB of zeros to `path` in 64 KiB chunks, stopping at the first
 * error (a full disk), and says how far it got. */
static void fill(const char *path, long mib) {
    static char chunk[65536];
    FILE *f = fopen(path, "w");
    long long written = 0;
    const char *error = NULL;
    if (!f) {
        error = strerror(errno);
    } else {
        for (long i = 0; i < mib * 16; i++) {
            if (fwrite(chunk, 1, sizeof chunk, f) != sizeof chunk || fflush(f)) {
                error = strerror(errno);
                break;
            }
            written += sizeof chunk;
        }
        if (fclose(f) && !error) {
            error = strerror(errno);
        }
    }
    printf("fill %s: %lld bytes, %s\n", path, written, error ? error : "ok");
}

/* Floods stdout with `mib` MiB of numbered lines of 100 bytes each (a log flood). */
static void flood(long mib) {
    char line[101];
    memset(line, 'x', sizeof line - 2);
    line[sizeof line - 2] = '\n';
    line[sizeof line - 1] = '\0';
    for (long n = 0; n < mib * 10486; n++) {
        int k = snprintf(line, 12, "%010ld", n);
        line[k] = ' ';
        fputs(line, stdout);
    }
    fflush(stdout);
}

/* Keeps the CPU busy for `seconds` of wall time (forever when 0). */
static void burn(long seconds) {
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    volatile unsigned long x = 1;
    for (;;) {
        for (int k = 0; k < 1000000; k++) {
            x = x * 6364136223846793005UL + 1442695040888963407UL;
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (seconds > 0 && now.tv_sec - start.tv_sec >= seconds) {
            return;
        }
    }
}

/* The blocks `alloc` keeps, chained through their first word: reachable from a global,
 * so the compiler cannot drop the allocations as unused. */
static void *volatile kept;

/* Allocates `mib` blocks of 1 MiB with malloc (wasi-libc grows the linear memory with
 * memory.grow) and writes each, as a real program filling a cache would. Never freed. */
static void alloc(long mib) {
    long n = 0;
    for (; n < mib; n++) {
        char *block = malloc(1 << 20);
        if (!block) {
            printf("alloc: malloc failed after %ld MiB\n", n);
            fflush(stdout);
            return;
        }
        memset(block, (int)(n & 0xff) | 1, 1 << 20);
        *(void **)block = kept;
        kept = block;
        if ((n + 1) % 16 == 0) {
            printf("alloc: %ld MiB\n", n + 1);
            fflush(stdout);
        }
    }
    printf("alloc: %ld MiB\n", n);
}

static void env(void) {
    size_t n = 0;
    while (environ[n]) {
        n++;
    }
    char **vars = malloc(n * sizeof *vars);
    memcpy(vars, environ, n * sizeof *vars);
    qsort(vars, n, sizeof *vars, by_name);
    for (size_t i = 0; i < n; i++) {
        printf("env %s\n", vars[i]);
    }
    free(vars);
}

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
        } else if (!strcmp(step, "cat")) {
            cat(next(argc, argv, &i));
        } else if (!strcmp(step, "ls")) {
            ls(next(argc, argv, &i));
        } else if (!strcmp(step, "try-write")) {
            const char *path = next(argc, argv, &i);
            try_write(path, next(argc, argv, &i));
        } else if (!strcmp(step, "symlink")) {
            const char *target = next(argc, argv, &i);
            const char *link = next(argc, argv, &i);
            if (symlink(target, link)) {
                printf("symlink %s: error: %s\n", link, strerror(errno));
            } else {
                printf("symlink %s: ok\n", link);
            }
        } else if (!strcmp(step, "fill")) {
            const char *path = next(argc, argv, &i);
            fill(path, atol(next(argc, argv, &i)));
        } else if (!strcmp(step, "flood")) {
            flood(atol(next(argc, argv, &i)));
        } else if (!strcmp(step, "burn")) {
            burn(atol(next(argc, argv, &i)));
        } else if (!strcmp(step, "alloc")) {
            alloc(atol(next(argc, argv, &i)));
        } else if (!strcmp(step, "env")) {
            env();
        } else if (!strcmp(step, "trap")) {
            __builtin_trap();
        } else {
            fprintf(stderr, "tool: unknown step %s\n", step);
            return 2;
        }
        fflush(stdout); // each step's line reaches the log as it happens
    }
    return 0;
}
