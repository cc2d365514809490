"""The page's labels in English and Japanese, chosen by Accept-Language.

Japanese when the browser ranks ``ja`` above English (or asks for it
alone), English otherwise. Only our own labels are translated: host ids,
user ids and error texts are shown as Redis holds them.
"""

from __future__ import annotations

EN = "en"
JA = "ja"

LABELS: dict[str, dict[str, str]] = {
    EN: {
        "fleet_title": "MTBBS fleet",
        "host_title": "Host",
        "hosts": "Hosts",
        "host": "host",
        "status": "status",
        "seen": "last report",
        "stale": "stale",
        "sessions": "sessions",
        "guests": "guests",
        "disk": "disk %",
        "rss": "BBS RSS MB",
        "memory": "BBS memory (RSS MB)",
        "trend": "trend",
        "alerts": "Alerts",
        "no_alerts": "No alert is pending or firing.",
        "check": "check",
        "state": "state",
        "severity": "severity",
        "since": "since",
        "summary": "summary",
        "collectors": "Collectors",
        "collector": "collector",
        "heartbeat": "heartbeat",
        "streams": "host streams",
        "sharing": "collectors sharing",
        "lag": "lag",
        "pending": "pending",
        "no_collectors": "No collector heartbeat: is 'mtbbs-collector run' running?",
        "no_hosts": "No host has reported yet (is an agent running?).",
        "ago": "ago",
        "redis_time": "Redis time",
        "updated": "updated",
        "redis_down": "Redis cannot be read",
        "redis_down_detail": "the figures below are the last ones read and are not current",
        "server_down": "The monitor does not answer",
        "fleet_link": "Fleet",
        "charts": "History",
        "checks": "Checks",
        "figures": "figures",
        "last_error": "last error",
        "current_sessions": "Current sessions",
        "client": "client",
        "user": "user",
        "connected": "since",
        "no_sessions": "No session.",
        "alert_states": "Alert states",
        "history": "history",
        "flapping": "flapping",
        "no_alert_states": "No alert state for this host.",
        "silences": "Silences covering this host",
        "no_silences": "No silence covers this host.",
        "pattern": "host pattern",
        "starts": "starts",
        "ends": "ends",
        "daily": "daily",
        "reason": "reason",
        "author": "author",
        "all_checks": "all checks",
        "never": "never",
        "threshold": "threshold",
        "no_data": "no data",
        "agent": "agent",
        "interval": "interval",
        "clock_skew": "clock skew",
        "not_found": "No host of this id has reported.",
        "OK": "OK",
        "WARNING": "WARNING",
        "CRITICAL": "CRITICAL",
        "UNKNOWN": "UNKNOWN",
        "firing": "firing",
        "pending_state": "pending",
        "ok": "ok",
        "resolved": "resolved",
        "no": "no",
        "warning": "warning",
        "critical": "critical",
        "stopped": "stopped",
        "stalled": "stalled",
        "running": "running",
    },
    JA: {
        "fleet_title": "MTBBS フリート",
        "host_title": "ホスト",
        "hosts": "ホスト",
        "host": "ホスト",
        "status": "状態",
        "seen": "最終報告",
        "stale": "途絶",
        "sessions": "セッション",
        "guests": "ゲスト",
        "disk": "ディスク %",
        "rss": "BBS RSS MB",
        "memory": "BBS メモリ (RSS MB)",
        "trend": "推移",
        "alerts": "アラート",
        "no_alerts": "保留中・発報中のアラートはありません。",
        "check": "チェック",
        "state": "状態",
        "severity": "重大度",
        "since": "開始",
        "summary": "概要",
        "collectors": "コレクター",
        "collector": "コレクター",
        "heartbeat": "ハートビート",
        "streams": "担当ストリーム",
        "sharing": "分担コレクター",
        "lag": "遅延",
        "pending": "未確認",
        "no_collectors": ("コレクターのハートビートがありません。"
                          "'mtbbs-collector run' は動いていますか?"),
        "no_hosts": "まだ報告したホストがありません (エージェントは動いていますか?)。",
        "ago": "前",
        "redis_time": "Redis 時刻",
        "updated": "更新",
        "redis_down": "Redis を読めません",
        "redis_down_detail": "下の数値は最後に読めたもので、現在の値ではありません",
        "server_down": "モニターが応答しません",
        "fleet_link": "フリート",
        "charts": "履歴",
        "checks": "チェック",
        "figures": "数値",
        "last_error": "最後のエラー",
        "current_sessions": "現在のセッション",
        "client": "クライアント",
        "user": "ユーザー",
        "connected": "接続",
        "no_sessions": "セッションはありません。",
        "alert_states": "アラート状態",
        "history": "履歴",
        "flapping": "フラッピング",
        "no_alert_states": "このホストのアラート状態はありません。",
        "silences": "このホストにかかるサイレンス",
        "no_silences": "このホストにかかるサイレンスはありません。",
        "pattern": "ホストのパターン",
        "starts": "開始",
        "ends": "終了",
        "daily": "毎日",
        "reason": "理由",
        "author": "作成者",
        "all_checks": "全チェック",
        "never": "なし",
        "threshold": "しきい値",
        "no_data": "データなし",
        "agent": "エージェント",
        "interval": "報告間隔",
        "clock_skew": "時計のずれ",
        "not_found": "この ID のホストは報告していません。",
        "OK": "正常",
        "WARNING": "警告",
        "CRITICAL": "重大",
        "UNKNOWN": "不明",
        "firing": "発報中",
        "pending_state": "保留中",
        "ok": "正常",
        "resolved": "解決",
        "no": "なし",
        "warning": "警告",
        "critical": "重大",
        "stopped": "停止",
        "stalled": "停滞",
        "running": "稼働中",
    },
}


def language(accept_language: str | None) -> str:
    """``ja`` when the header prefers Japanese to English, else ``en``."""
    best_lang, best_q = EN, -1.0
    for item in (accept_language or "").split(","):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            name, _, value = param.strip().partition("=")
            if name == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        primary = tag.split("-", 1)[0]
        if primary not in (EN, JA) or quality <= 0:
            continue
        # Equal weights keep the header's order: the first listed wins.
        if quality > best_q:
            best_lang, best_q = primary, quality
    return best_lang


def labels(lang: str) -> dict[str, str]:
    """The labels of ``lang`` (English for anything unknown)."""
    return LABELS.get(lang, LABELS[EN])
