// Helpers shared by the wasi:http handlers; see common.h.
#include "common.h"

#include <stdlib.h>
#include <string.h>

void text_add(text_t *t, const void *bytes, size_t len) {
    if (t->len + len > t->cap) {
        size_t cap = t->cap ? t->cap : 256;
        while (cap < t->len + len) cap *= 2;
        t->ptr = realloc(t->ptr, cap);
        if (!t->ptr) abort();
        t->cap = cap;
    }
    memcpy(t->ptr + t->len, bytes, len);
    t->len += len;
}

void text_str(text_t *t, const char *s) { text_add(t, s, strlen(s)); }

void text_uint(text_t *t, unsigned long n) {
    char digits[24];
    size_t i = sizeof digits;
    do digits[--i] = (char)('0' + n % 10); while ((n /= 10) != 0);
    text_add(t, digits + i, sizeof digits - i);
}

void text_free(text_t *t) {
    free(t->ptr);
    *t = (text_t){0};
}

int env_get(const char *name, text_t *out) {
    handler_list_tuple2_string_string_t env;
    wasi_cli_environment_get_environment(&env);
    int found = 0;
    size_t n = strlen(name);
    for (size_t i = 0; i < env.len && !found; i++) {
        handler_string_t *key = &env.ptr[i].f0, *value = &env.ptr[i].f1;
        if (key->len == n && memcmp(key->ptr, name, n) == 0) {
            text_add(out, value->ptr, value->len);
            found = 1;
        }
    }
    handler_list_tuple2_string_string_free(&env);
    return found;
}

static void add_header(wasi_http_types_borrow_fields_t fields, const char *name,
                       const char *value) {
    wasi_http_types_field_name_t key;
    handler_string_set(&key, name);
    wasi_http_types_field_value_t val = {(uint8_t *)value, strlen(value)};
    wasi_http_types_header_error_t err;
    wasi_http_types_method_fields_append(fields, &key, &val, &err);
}

void respond(response_out_t out, uint16_t status, const char *body, size_t len) {
    text_t length = {0};
    text_uint(&length, len);
    text_add(&length, "", 1);
    wasi_http_types_own_fields_t headers = wasi_http_types_constructor_fields();
    add_header(wasi_http_types_borrow_fields(headers), "content-type", "text/plain; charset=utf-8");
    add_header(wasi_http_types_borrow_fields(headers), "content-length", length.ptr);
    text_free(&length);

    wasi_http_types_own_outgoing_response_t response =
        wasi_http_types_constructor_outgoing_response(headers);
    wasi_http_types_borrow_outgoing_response_t r = wasi_http_types_borrow_outgoing_response(response);
    wasi_http_types_method_outgoing_response_set_status_code(r, status);
    wasi_http_types_own_outgoing_body_t outgoing;
    wasi_http_types_method_outgoing_response_body(r, &outgoing);
    wasi_http_types_own_output_stream_t stream;
    wasi_http_types_method_outgoing_body_write(wasi_http_types_borrow_outgoing_body(outgoing), &stream);

    // Hand the response over first: the host sends the head while we write the body.
    wasi_http_types_result_own_outgoing_response_error_code_t result = {
        .is_err = false, .val.ok = response};
    wasi_http_types_static_response_outparam_set(out, &result);

    wasi_io_streams_borrow_output_stream_t s = wasi_io_streams_borrow_output_stream(stream);
    for (size_t done = 0; done < len;) {
        // blocking-write-and-flush takes at most 4096 bytes a call.
        size_t n = len - done < 4096 ? len - done : 4096;
        handler_list_u8_t chunk = {(uint8_t *)body + done, n};
        wasi_io_streams_stream_error_t err;
        if (!wasi_io_streams_method_output_stream_blocking_write_and_flush(s, &chunk, &err)) {
            if (err.tag == WASI_IO_STREAMS_STREAM_ERROR_LAST_OPERATION_FAILED)
                wasi_io_error_error_drop_own(err.val.last_operation_failed);
            break; // the client went away
        }
        done += n;
    }
    wasi_io_streams_output_stream_drop_own(stream);
    wasi_http_types_error_code_t err;
    if (!wasi_http_types_static_outgoing_body_finish(outgoing, NULL, &err))
        wasi_http_types_error_code_free(&err);
}
