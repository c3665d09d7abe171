# The compiled build's TLS record calls (tlsio.py is the pure-Python one, and documents what each does): OpenSSL's
# SSL_read / SSL_write / BIO_read called from C on the very SSL object and memory BIOs of Python's ssl module, so a
# record costs no Python frame, no exception (Python's read ends every batch with SSLWantReadError) and no
# intermediate bytes. Only cimported by tlsstream.pxd; tlsio.py itself is never compiled.
#
# Nothing is linked at build time (no OpenSSL headers needed): the functions are looked up with dlsym in the
# library the interpreter's own _ssl module is linked against (`load`), so they are the same OpenSSL, and the
# SSL object is read out of _ssl's socket object only when the layout checks of `bind` hold: known CPython
# versions, the exact type names, and the SSL object's own read and write BIOs being the two MemoryBIOs we hold.
# Otherwise tls.py uses the event loop's TLS instead.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE


cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>
    #include <string.h>
    #include <sys/socket.h>

    typedef struct pgd_ssl_st PGD_SSL;
    typedef struct pgd_bio_st PGD_BIO;
    /* The head of CPython's PySSLSocket and PySSLMemoryBIO (Modules/_ssl.c, the same from 3.7 to 3.14). */
    typedef struct { PyObject_HEAD PyObject *socket; PGD_SSL *ssl; } pgd_ssl_socket;
    typedef struct { PyObject_HEAD PGD_BIO *bio; int eof_written; } pgd_memory_bio;

    #define PGD_SSL_ERROR_WANT_READ 2
    #define PGD_SSL_ERROR_ZERO_RETURN 6
    #define PGD_BIO_CTRL_PENDING 10
    #define PGD_CHUNK 65536
    #define PGD_MAX_RECORD 16384

    static struct {
        int (*SSL_read)(PGD_SSL *, void *, int);
        int (*SSL_write)(PGD_SSL *, const void *, int);
        int (*SSL_get_error)(const PGD_SSL *, int);
        int (*SSL_pending)(const PGD_SSL *);
        PGD_BIO *(*SSL_get_rbio)(const PGD_SSL *);
        PGD_BIO *(*SSL_get_wbio)(const PGD_SSL *);
        int (*BIO_write)(PGD_BIO *, const void *, int);
        int (*BIO_read)(PGD_BIO *, void *, int);
        long (*BIO_ctrl)(PGD_BIO *, int, long, void *);
        unsigned long (*ERR_get_error)(void);
        void (*ERR_clear_error)(void);
        void (*ERR_error_string_n)(unsigned long, char *, size_t);
    } pgd_ossl;
    static int pgd_ossl_state = 0;  /* 0: not looked up yet, 1: ready, -1: unavailable */
    static char pgd_chunk[PGD_CHUNK];

    static int pgd_tls_load(const char *library) {
        void *handle;
        if (pgd_ossl_state != 0)
            return pgd_ossl_state > 0;
        pgd_ossl_state = -1;
        if (PY_VERSION_HEX < 0x03070000 || PY_VERSION_HEX >= 0x030F0000)
            return 0;  /* the object layouts above are checked for these versions only */
        handle = dlopen(library, RTLD_NOW | RTLD_NOLOAD);  /* already loaded by the interpreter: never a second copy */
        if (handle == NULL)
            return 0;
    #define PGD_SYMBOL(name) if ((*(void **)&pgd_ossl.name = dlsym(handle, #name)) == NULL) return 0;
        PGD_SYMBOL(SSL_read) PGD_SYMBOL(SSL_write) PGD_SYMBOL(SSL_get_error) PGD_SYMBOL(SSL_pending)
        PGD_SYMBOL(SSL_get_rbio)
        PGD_SYMBOL(SSL_get_wbio) PGD_SYMBOL(BIO_write) PGD_SYMBOL(BIO_read) PGD_SYMBOL(BIO_ctrl)
        PGD_SYMBOL(ERR_get_error) PGD_SYMBOL(ERR_clear_error) PGD_SYMBOL(ERR_error_string_n)
    #undef PGD_SYMBOL
        pgd_ossl_state = 1;
        return 1;
    }

    static int pgd_tls_bind(PyObject *sock, PyObject *incoming, PyObject *outgoing) {
        PGD_SSL *ssl;
        if (pgd_ossl_state <= 0 || strcmp(Py_TYPE(sock)->tp_name, "_ssl._SSLSocket") != 0
                || strcmp(Py_TYPE(incoming)->tp_name, "_ssl.MemoryBIO") != 0
                || strcmp(Py_TYPE(outgoing)->tp_name, "_ssl.MemoryBIO") != 0
                || Py_TYPE(sock)->tp_basicsize < (Py_ssize_t)sizeof(pgd_ssl_socket)
                || Py_TYPE(incoming)->tp_basicsize < (Py_ssize_t)sizeof(pgd_memory_bio))
            return 0;
        ssl = ((pgd_ssl_socket *)sock)->ssl;
        return ssl != NULL && ((pgd_memory_bio *)incoming)->bio != NULL
            && pgd_ossl.SSL_get_rbio(ssl) == ((pgd_memory_bio *)incoming)->bio
            && pgd_ossl.SSL_get_wbio(ssl) == ((pgd_memory_bio *)outgoing)->bio;
    }

    /* OpenSSL's reason for a failed call, as a ConnectionResetError; its error queue is left empty (the next
       call's SSL_get_error depends on that). */
    static PyObject *pgd_tls_failure(PGD_SSL *ssl, int ret) {
        char reason[256];
        int kind = pgd_ossl.SSL_get_error(ssl, ret);  /* first: it reads the error queue ERR_get_error empties */
        unsigned long code = pgd_ossl.ERR_get_error();
        if (code != 0)
            pgd_ossl.ERR_error_string_n(code, reason, sizeof reason);
        else
            snprintf(reason, sizeof reason, "SSL error %d", kind);
        pgd_ossl.ERR_clear_error();
        PyErr_Format(PyExc_ConnectionResetError, "TLS: %s", reason);
        return NULL;
    }

    static int pgd_append(PyObject **result, const char *data, Py_ssize_t n) {
        Py_ssize_t old;
        if (*result == NULL) {
            *result = PyBytes_FromStringAndSize(data, n);
            return *result != NULL;
        }
        old = PyBytes_GET_SIZE(*result);
        if (_PyBytes_Resize(result, old + n) < 0)
            return 0;
        memcpy(PyBytes_AS_STRING(*result) + old, data, n);
        return 1;
    }

    /* tlsio.py `decrypt`: feed ciphertext, return every byte of plaintext it completes (None: close_notify). */
    static PyObject *pgd_tls_decrypt(PyObject *sock, PyObject *incoming, const char *data, Py_ssize_t n) {
        PGD_SSL *ssl = ((pgd_ssl_socket *)sock)->ssl;
        PGD_BIO *rbio = ((pgd_memory_bio *)incoming)->bio;
        PyObject *result = NULL;
        Py_ssize_t used = 0;
        int ret, kind;
        while (n > 0) {
            int part = n > (1 << 30) ? (1 << 30) : (int)n;
            if (pgd_ossl.BIO_write(rbio, data, part) != part)
                return PyErr_NoMemory();
            data += part;
            n -= part;
        }
        for (;;) {
            if (PGD_CHUNK - used < PGD_MAX_RECORD) {
                if (!pgd_append(&result, pgd_chunk, used))
                    return NULL;
                used = 0;
            }
            ret = pgd_ossl.SSL_read(ssl, pgd_chunk + used, (int)(PGD_CHUNK - used));
            if (ret > 0) {
                used += ret;
                /* Nothing left to read from, buffered or not: the next SSL_read would only fail with WANT_READ. */
                if (pgd_ossl.SSL_pending(ssl) == 0 && pgd_ossl.BIO_ctrl(rbio, PGD_BIO_CTRL_PENDING, 0, NULL) == 0)
                    break;
                continue;
            }
            kind = pgd_ossl.SSL_get_error(ssl, ret);
            if (kind == PGD_SSL_ERROR_WANT_READ)
                break;
            if (kind == PGD_SSL_ERROR_ZERO_RETURN) {
                pgd_ossl.ERR_clear_error();
                if (result == NULL && used == 0)
                    Py_RETURN_NONE;
                break;
            }
            Py_XDECREF(result);
            return pgd_tls_failure(ssl, ret);
        }
        if (result == NULL)
            return PyBytes_FromStringAndSize(pgd_chunk, used);
        if (used > 0 && !pgd_append(&result, pgd_chunk, used))
            return NULL;
        return result;
    }

    /* tlsio.py `send`: encrypt `data` (n may be 0), send the records straight to `fd` (when >= 0) while the socket
       takes them, and return the records it did not take (b"" when all went). */
    static PyObject *pgd_tls_send(PyObject *sock, PyObject *outgoing, const char *data, Py_ssize_t n, int fd) {
        PGD_SSL *ssl = ((pgd_ssl_socket *)sock)->ssl;
        PGD_BIO *wbio = ((pgd_memory_bio *)outgoing)->bio;
        PyObject *rest;
        long pending;
        int ret, got = 0;
        ssize_t sent = 0;
        while (n > 0) {
            int part = n > (1 << 30) ? (1 << 30) : (int)n;
            ret = pgd_ossl.SSL_write(ssl, data, part);
            if (ret <= 0)
                return pgd_tls_failure(ssl, ret);
            data += ret;
            n -= ret;
        }
        if (fd >= 0) {
            for (;;) {
                got = pgd_ossl.BIO_read(wbio, pgd_chunk, PGD_CHUNK);
                if (got <= 0) {
                    got = sent = 0;
                    break;
                }
                sent = send(fd, pgd_chunk, (size_t)got, MSG_DONTWAIT | MSG_NOSIGNAL);
                if (sent < 0)
                    sent = 0;  /* EAGAIN, or an error the event loop's transport meets and reports */
                if (sent < got)
                    break;
            }
        }
        pending = pgd_ossl.BIO_ctrl(wbio, PGD_BIO_CTRL_PENDING, 0, NULL);
        if (pending < 0)
            pending = 0;
        rest = PyBytes_FromStringAndSize(NULL, (got - sent) + pending);
        if (rest == NULL)
            return NULL;
        if (got > sent)
            memcpy(PyBytes_AS_STRING(rest), pgd_chunk + sent, (size_t)(got - sent));
        if (pending > 0
                && pgd_ossl.BIO_read(wbio, PyBytes_AS_STRING(rest) + (got - sent), (int)pending) != (int)pending) {
            Py_DECREF(rest);
            return PyErr_NoMemory();
        }
        return rest;
    }

    static long pgd_tls_pending(PyObject *outgoing) {
        return pgd_ossl.BIO_ctrl(((pgd_memory_bio *)outgoing)->bio, PGD_BIO_CTRL_PENDING, 0, NULL);
    }
    """
    int pgd_tls_load(const char *library)
    int pgd_tls_bind(object sock, object incoming, object outgoing)
    object pgd_tls_decrypt(object sock, object incoming, const char *data, Py_ssize_t n)
    bytes pgd_tls_send(object sock, object outgoing, const char *data, Py_ssize_t n, int fd)
    long pgd_tls_pending(object outgoing)


cdef inline bint load(str library):
    cdef bytes path = library.encode()
    return pgd_tls_load(path) != 0


cdef inline bint bind(object sock, object incoming, object outgoing):
    return pgd_tls_bind(sock, incoming, outgoing) != 0


cdef inline object decrypt(object sock, object incoming, bytes data):
    return pgd_tls_decrypt(sock, incoming, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))


cdef inline bytes send(object sock, object outgoing, object data, int fd):
    cdef bytes raw = data if type(data) is bytes else bytes(data)
    return pgd_tls_send(sock, outgoing, PyBytes_AS_STRING(raw), PyBytes_GET_SIZE(raw), fd)


cdef inline Py_ssize_t pending(object outgoing):
    return pgd_tls_pending(outgoing)
