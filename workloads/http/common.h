// Helpers the wasi:http handlers (hello.c, forward.c, ready.c) share: a growing text
// buffer, a look-up in the environment, and sending a whole text/plain response.
#ifndef KRUSTLET_HTTP_COMMON_H
#define KRUSTLET_HTTP_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "bindings/handler/handler.h"

typedef wasi_http_types_own_response_outparam_t response_out_t;

// Bytes appended to with text_add, text_str (a C string) and text_uint (in decimal);
// free with text_free.
typedef struct {
    char *ptr;
    size_t len, cap;
} text_t;

void text_add(text_t *t, const void *bytes, size_t len);
void text_str(text_t *t, const char *s);
void text_uint(text_t *t, unsigned long n);
void text_free(text_t *t);

// Appends the value of the environment variable NAME (wasi:cli/environment) to OUT;
// returns whether it is set.
int env_get(const char *name, text_t *out);

// Answers with STATUS and BODY (text/plain, with a content-length).
void respond(response_out_t out, uint16_t status, const char *body, size_t len);

#endif
