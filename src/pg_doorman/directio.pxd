# The compiled build's send_nowait (directio.py is the pure-Python one): one send() on a non-blocking socket,
# without the GIL release, argument parsing and exception objects of os.write. Only cimported by connection.pxd;
# directio.py itself is never compiled.
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE
from libc.errno cimport EAGAIN, EINTR, errno


cdef extern from "<sys/socket.h>" nogil:
    ssize_t c_send "send" (int fd, const void *buf, size_t n, int flags)
    enum: MSG_DONTWAIT
    enum: MSG_NOSIGNAL


cdef inline Py_ssize_t send_nowait(int fd, bytes data) noexcept:
    cdef ssize_t sent = c_send(fd, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), MSG_DONTWAIT | MSG_NOSIGNAL)
    if sent >= 0:
        return sent
    if errno == EAGAIN or errno == EINTR:  # EWOULDBLOCK is EAGAIN on Linux
        return 0
    return -1
