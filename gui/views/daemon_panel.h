// daemon_panel.h: a safeshardd client — address and token file, runs and jobs with state and
// progress (refreshing every 2 s), consolidate or retry a run, cancel a job, open a run.
// The token is read from its file for each request and never shown.
#ifndef SAFESHARD_GUI_VIEWS_DAEMON_PANEL_H_
#define SAFESHARD_GUI_VIEWS_DAEMON_PANEL_H_

#include <QJsonArray>
#include <QWidget>

class QLabel;
class QLineEdit;
class QNetworkAccessManager;
class QNetworkReply;
class QPushButton;
class QTableWidget;
class QTimer;

namespace safeshard::gui {

class DaemonPanel : public QWidget {
  Q_OBJECT

 public:
  explicit DaemonPanel(QWidget* parent = nullptr);

  void Connect();  // starts refreshing
  void Disconnect();
  void Refresh();  // one GET of runs and jobs
  void ConsolidateSelected();
  void CancelSelectedJob();
  void OpenSelected();
  bool connected() const { return connected_; }
  QString status_text() const;
  const QJsonArray& runs() const { return runs_; }
  const QJsonArray& jobs() const { return jobs_; }

  QLineEdit* address_edit;
  QLineEdit* token_file_edit;
  QPushButton* connect_button;
  QTableWidget* runs_table;
  QTableWidget* jobs_table;
  QPushButton* consolidate_button;
  QPushButton* cancel_job_button;
  QPushButton* open_button;

 signals:
  void openRequested(const QString& path);
  void refreshed();  // runs and jobs were updated
  void actionDone(bool ok, const QString& message);

 private:
  QNetworkReply* Get(const QString& path);
  QNetworkReply* Post(const QString& path);
  void SetStatus(const QString& text, bool error);
  QString ReplyError(QNetworkReply* reply, const QByteArray& body) const;
  void FillRuns();
  void FillJobs();
  QString SelectedRunId() const;

  QNetworkAccessManager* net_;
  QTimer* timer_;
  QLabel* status_;
  QJsonArray runs_, jobs_;
  bool connected_ = false;
  bool reached_ = false;  // the daemon answered since Connect()
  int in_flight_ = 0;
};

}  // namespace safeshard::gui

#endif  // SAFESHARD_GUI_VIEWS_DAEMON_PANEL_H_
