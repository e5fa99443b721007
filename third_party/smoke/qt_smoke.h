// A QObject with a signal and a slot: proves qt_cc_library runs moc and links QtCore.
#ifndef SAFESHARD_THIRD_PARTY_SMOKE_QT_SMOKE_H_
#define SAFESHARD_THIRD_PARTY_SMOKE_QT_SMOKE_H_

#include <QObject>

class Counter : public QObject {
  Q_OBJECT

 public:
  int value() const { return value_; }

 Q_SIGNALS:
  void changed(int value);

 public Q_SLOTS:
  void increment() {
    ++value_;
    Q_EMIT changed(value_);
  }

 private:
  int value_ = 0;
};

#endif  // SAFESHARD_THIRD_PARTY_SMOKE_QT_SMOKE_H_
