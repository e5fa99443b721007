"""Qt 6 from Debian (qt6-base-dev): include flags and a qt_cc_library macro that runs moc."""

QT_INCLUDE = "/usr/include/x86_64-linux-gnu/qt6"

QT_MODULES = ["Core", "Gui", "Widgets", "Network", "Concurrent", "Test"]

# Qt needs position-independent code (-fPIC is on globally in .bazelrc).
QT_COPTS = ["-isystem", QT_INCLUDE] + [
    x
    for m in QT_MODULES
    for x in ["-isystem", QT_INCLUDE + "/Qt" + m]
]

MOC = "/usr/lib/qt6/libexec/moc"

def qt_cc_library(name, srcs = [], hdrs = [], moc_hdrs = [], deps = [], copts = [], **kwargs):
    """A cc_library whose `moc_hdrs` (headers declaring Q_OBJECT classes) are run through moc.

    Each header h.h yields a genrule producing moc_h.cpp, compiled into the library.
    """
    moc_srcs = []
    for h in moc_hdrs:
        base = h.split("/")[-1].rsplit(".", 1)[0]
        out = "moc_%s_%s.cpp" % (name, base)
        native.genrule(
            name = "%s_moc_%s" % (name, base),
            srcs = [h],
            outs = [out],
            cmd = "%s $(location %s) -o $@ -f'%s/%s'" % (MOC, h, native.package_name(), h),
        )
        moc_srcs.append(out)
    native.cc_library(
        name = name,
        srcs = srcs + moc_srcs,
        hdrs = hdrs + moc_hdrs,
        copts = QT_COPTS + copts,
        deps = deps,
        **kwargs
    )
