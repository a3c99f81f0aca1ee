// hash: a CPU-bound workload for the compute benchmark (hack/bench runtime). Fills a
// 1 MiB buffer from a xorshift generator, then hashes it ROUNDS times (argument; 8000 by
// default) with FNV-1a over 64-bit words, each round chained on the last. Prints the
// final hash (so the work cannot be optimised away, and runs can be checked to agree)
// and the seconds the hashing took by the monotonic clock, measured inside the program
// so the figure excludes process start, compilation and instantiation:
//   hash=0123456789abcdef rounds=8000 seconds=1.234
// Built for wasm32-wasi by hack/build-wasm and natively by the benchmark.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define WORDS (1 << 17) // 1 MiB of uint64_t

static uint64_t buffer[WORDS];

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    long rounds = argc > 1 ? atol(argv[1]) : 8000;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (int i = 0; i < WORDS; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buffer[i] = x;
    }
    double began = now();
    uint64_t h = 0xcbf29ce484222325ULL;
    for (long r = 0; r < rounds; r++) {
        for (int i = 0; i < WORDS; i++) {
            h ^= buffer[i];
            h *= 0x100000001b3ULL;
        }
        // Feed the round's result back so no round can be skipped or reordered.
        buffer[h % WORDS] ^= h;
    }
    double took = now() - began;
    printf("hash=%016llx rounds=%ld seconds=%.3f\n", (unsigned long long)h, rounds, took);
    return 0;
}
