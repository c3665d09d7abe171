# Cython declarations for context.py (used only by the optional compiled build, see setup.py); the .py file runs
# unchanged without them. client.pxd cimports ClientContext, so its limits are C fields on the forwarding path.


cdef class ClientContext:
    cdef public object access_rules
    cdef public object admin
    cdef public object admin_password
    cdef public object admin_username
    cdef public object admit
    cdef public object cancel
    cdef public bytes check_query
    cdef public object client_closed
    cdef public double login_timeout
    cdef public Py_ssize_t max_message_size
    cdef public object registry
    cdef public bint shutting_down
