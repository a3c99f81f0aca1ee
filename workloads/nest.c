// nest: nests DEPTH directories named "d" under DIR, descriptor by descriptor (each one
// made and opened relative to the one above, whose descriptor is then closed), so no
// path ever grows and the module holds two descriptors at most; then optionally writes a
// file "f" of BYTES bytes at the bottom, and sleeps until it is stopped.
//   usage: nest DIR DEPTH [BYTES]
// It prints "nest: N" every 1000 levels, then "nested N" (N: the depth reached, with
// "nest: error at N: REASON" before it when it stopped early), then, with BYTES,
// "wrote N bytes, ok" or "wrote N bytes, REASON".
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Writes `bytes` zeros to the file "f" of the directory `dir`, in 64 KiB chunks. */
static void write_bottom(int dir, long long bytes) {
    static char chunk[65536];
    long long written = 0;
    const char *error = NULL;
    int f = openat(dir, "f", O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (f < 0) {
        error = strerror(errno);
    } else {
        while (written < bytes) {
            long long left = bytes - written;
            size_t n = left < (long long)sizeof chunk ? (size_t)left : sizeof chunk;
            ssize_t w = write(f, chunk, n);
            if (w <= 0) {
                error = w < 0 ? strerror(errno) : "short write";
                break;
            }
            written += w;
        }
        if (close(f) && !error) {
            error = strerror(errno);
        }
    }
    printf("wrote %lld bytes, %s\n", written, error ? error : "ok");
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: nest DIR DEPTH [BYTES]\n");
        return 2;
    }
    long depth = atol(argv[2]);
    long long bytes = argc > 3 ? atoll(argv[3]) : 0;
    int fd = open(argv[1], O_RDONLY | O_DIRECTORY);
    if (fd < 0) {
        printf("nest: error at 0: %s\n", strerror(errno));
        return 1;
    }
    long reached = 0;
    while (reached < depth) {
        if (mkdirat(fd, "d", 0755) && errno != EEXIST) {
            printf("nest: error at %ld: %s\n", reached, strerror(errno));
            break;
        }
        int next = openat(fd, "d", O_RDONLY | O_DIRECTORY);
        if (next < 0) {
            printf("nest: error at %ld: %s\n", reached, strerror(errno));
            break;
        }
        close(fd);
        fd = next;
        reached++;
        if (reached % 1000 == 0) {
            printf("nest: %ld\n", reached);
            fflush(stdout);
        }
    }
    printf("nested %ld\n", reached);
    // Said before the write: a size limit may end the module during it.
    fflush(stdout);
    if (bytes > 0) {
        write_bottom(fd, bytes);
    }
    fflush(stdout);
    for (;;) {
        sleep(3600);
    }
}
