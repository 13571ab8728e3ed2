"""Interface text in English and Chinese, chosen from the browser's language.

Labels of the page's components go through ``gr.I18n``, which the browser resolves from
``navigator.language``; text made on the server (answers' sources, notices, errors) is picked from
the ``Accept-Language`` header of the same browser. Both come from the one language setting.
"""

from __future__ import annotations

from typing import Any

LANGS = ("en", "zh")

TEXTS: dict[str, tuple[str, str]] = {
    # --- labels (also given to gr.I18n) ---
    "subtitle": (
        "Ask questions about your team's documents. Answers cite their sources as [n].",
        "就团队文档提问。回答用 [n] 标注出处。",
    ),
    "collection": ("Knowledge base", "知识库"),
    "model": ("Model", "模型"),
    "model_auto": (
        "Automatic ({default}, or a model that takes the attachments)",
        "自动（{default}，或能处理附件的模型）",
    ),
    "conversations": ("Conversations", "对话"),
    "new_chat": ("New conversation", "新对话"),
    "delete_chat": ("Delete conversation", "删除对话"),
    "chatbot": ("Chat", "聊天"),
    "placeholder": (
        "Ask a question, or attach images and documents…",
        "输入问题，或附上图片和文档……",
    ),
    "upload_title": ("Upload documents", "上传文档"),
    "upload_files": ("Documents", "文档"),
    "upload_button": ("Upload to the knowledge base", "上传到知识库"),
    "upload_hint": (
        "Uploaded documents are indexed into the selected knowledge base; a new name creates one.",
        "上传的文档会被索引进所选知识库；输入新名称即新建一个知识库。",
    ),
    # --- made on the server ---
    "untitled": ("New conversation", "新对话"),
    "sources": ("Sources", "来源"),
    "score": ("score", "相关度"),
    "searched_for": ("Searched for", "检索问题"),
    "no_sources": ("No sources were used for this answer.", "此回答未使用任何来源。"),
    "degraded": ("Answered with parts of the system down", "部分服务不可用时给出的回答"),
    "degraded_retriever": (
        "the knowledge base could not be searched, so this answer has no sources",
        "无法检索知识库，此回答没有依据来源",
    ),
    "degraded_history": (
        "the conversation history was unavailable, so earlier turns were not taken into account",
        "对话历史不可用，未考虑之前的内容",
    ),
    "degraded_other": ("{part} was unavailable", "{part} 不可用"),
    "thinking": ("Searching the knowledge base…", "正在检索知识库……"),
    "reasoning": ("Thinking", "思考过程"),
    "reasoning_streaming": ("Thinking…", "思考中……"),
    "answered_by": ("Answered by", "回答模型"),
    "quoted": ("Quoted from source [{n}]", "引自来源 [{n}]"),
    "quoted_fallback": (
        "The model's answer did not match its sources — quoted from [{n}] instead",
        "模型的回答与其来源不符 —— 改为引用来源 [{n}] 的原文",
    ),
    "not_grounded": (
        "Not confirmed by its sources: {reason}",
        "未能在来源中得到证实：{reason}",
    ),
    "quoted_here": ("Quoted", "引用"),
    "cap_vision": ("images", "图片"),
    "cap_audio": ("audio", "音频"),
    "cap_video": ("video", "视频"),
    "cap_reasoning": ("thinks", "推理"),
    "cap_list": (" ({marks})", "（{marks}）"),
    "cap_sep": (", ", "、"),
    "empty_question": ("Type a question or attach a file.", "请输入问题或附上文件。"),
    "too_many_files": ("Attach at most {n} files at once.", "一次最多附加 {n} 个文件。"),
    "file_too_large": ("{name} is larger than {limit} MB.", "{name} 超过 {limit} MB。"),
    "file_type": (
        "{name}: this file type is not accepted (accepted: {types}).",
        "{name}：不支持此文件类型（支持：{types}）。",
    ),
    "image_attached": ("image: {name}", "图片：{name}"),
    "upload_queued": (
        "{name}: queued for indexing into “{collection}”",
        "{name}：已排队，将索引进“{collection}”",
    ),
    "upload_running": ("{name}: indexing…", "{name}：正在索引……"),
    "upload_publishing": (
        "{name}: indexed (chunks: {chunks}); waiting until “{collection}” serves it…",
        "{name}：已索引（{chunks} 个片段）；等待“{collection}”开始提供检索……",
    ),
    "upload_done": (
        "{name}: searchable in “{collection}” (chunks: {chunks})",
        "{name}：已可在“{collection}”中检索（{chunks} 个片段）",
    ),
    "upload_failed": ("{name}: indexing failed: {error}", "{name}：索引失败：{error}"),
    "upload_waiting": (
        "{name}: still {status} after {seconds} s; it will finish in the background",
        "{name}：{seconds} 秒后仍为 {status}，将在后台完成",
    ),
    "upload_nothing": ("Choose one or more documents first.", "请先选择文档。"),
    "upload_need_collection": ("Choose or type a knowledge base first.", "请先选择或输入知识库名称。"),
    "feedback_thanks_up": ("Thanks for the feedback", "感谢反馈"),
    "feedback_thanks_down": ("Thanks — this answer was marked as not helpful", "感谢反馈 —— 已标记为无帮助"),
    "feedback_not_rateable": ("Only answers can be rated.", "只能评价回答。"),
    "deleted": ("Conversation deleted.", "对话已删除。"),
    "no_collections": (
        "This API key may not read any knowledge base.",
        "此 API 密钥无权读取任何知识库。",
    ),
    # --- login ---
    "login_title": ("Log in to omnirag", "登录 omnirag"),
    "login_password": ("Password", "密码"),
    "login_button": ("Log in", "登录"),
    "login_again": ("Log in again", "重新登录"),
    "login_wrong_password": ("Wrong password.", "密码错误。"),
    "login_not_local": ("This UI does not use a local password.", "此界面不使用本地密码登录。"),
    "login_provider_down": (
        "The identity provider cannot be reached; please try again shortly.",
        "无法连接身份提供方，请稍后重试。",
    ),
    "login_failed_oidc": ("The login did not complete ({error}).", "登录未完成（{error}）。"),
    "login_forbidden": ("You may not use this UI: {reason}.", "你无权使用此界面：{reason}。"),
    "logged_out": ("You are logged out.", "你已退出登录。"),
    "signed_in_as": ("Signed in as **{name}**", "当前用户：**{name}**"),
    "logout": ("Log out", "退出登录"),
    # --- the user's documents ---
    "docs_title": ("Your documents in this knowledge base", "你在此知识库中的文档"),
    "docs_refresh": ("Refresh", "刷新"),
    "docs_more": ("More", "更多"),
    "docs_remove": ("Remove selected", "删除所选"),
    "docs_none": ("You have uploaded no documents here.", "你尚未在此上传文档。"),
    "docs_count": ("{shown} of {total} shown", "显示 {shown} / {total}"),
    "docs_pick": ("Select the documents to remove first.", "请先选择要删除的文档。"),
    "docs_removing": ("{name}: removing…", "{name}：正在删除……"),
    "docs_removed": ("{name}: removed", "{name}：已删除"),
    "docs_remove_failed": ("{name}: not removed: {error}", "{name}：未删除：{error}"),
    "docs_forbidden": (
        "you may remove only documents you uploaded",
        "只能删除你自己上传的文档",
    ),
    "docs_from_kb": (
        "it comes from the knowledge base's own sources; an operator changes those",
        "它来自知识库自身的数据源，需由管理员修改",
    ),
    "docs_gone": ("it no longer exists", "它已不存在"),
    # --- errors ---
    "err_401": (
        "The gateway refused the UI's API key (401): {message}. Set UI_API_KEY (or GATEWAY_DEV_KEY) "
        "to a valid key.",
        "网关拒绝了界面的 API 密钥（401）：{message}。请把 UI_API_KEY（或 GATEWAY_DEV_KEY）设为有效密钥。",
    ),
    "err_403": (
        "Not allowed (403): {message}. Choose another knowledge base.",
        "无权访问（403）：{message}。请选择其他知识库。",
    ),
    "err_model": (
        "This model is not offered to the UI (404): {message}. Choose another model.",
        "界面无权使用此模型（404）：{message}。请选择其他模型。",
    ),
    "err_429": (
        "Too many requests (429): {message}. Please wait {seconds} s and try again.",
        "请求过于频繁（429）：{message}。请等待 {seconds} 秒后重试。",
    ),
    "err_429_nowait": (
        "Too many requests (429): {message}. Please wait a moment and try again.",
        "请求过于频繁（429）：{message}。请稍后重试。",
    ),
    "err_5xx": (
        "The gateway could not answer ({status}): {message}. Please try again shortly.",
        "网关暂时无法回答（{status}）：{message}。请稍后重试。",
    ),
    "err_4xx": (
        "The gateway refused the request ({status}): {message}",
        "网关拒绝了请求（{status}）：{message}",
    ),
    "err_unreachable": (
        "The gateway cannot be reached ({message}). Is it running at {url}?",
        "无法连接网关（{message}）。请确认它在 {url} 运行。",
    ),
    "err_stream": (
        "The answer was cut off: {message}. Please ask again.",
        "回答中断：{message}。请重新提问。",
    ),
    "err_internal": (
        "Something went wrong in the UI ({kind}). Please try again.",
        "界面出错（{kind}）。请重试。",
    ),
}

# Server-made texts and labels share one table; gr.I18n takes the labels per language.
LABELS = (
    "subtitle",
    "collection",
    "model",
    "conversations",
    "new_chat",
    "delete_chat",
    "chatbot",
    "placeholder",
    "upload_title",
    "upload_files",
    "upload_button",
    "upload_hint",
    "logout",
    "docs_title",
    "docs_refresh",
    "docs_more",
    "docs_remove",
)


def lang_of(accept_language: str | None) -> str:
    """``zh`` when the browser prefers Chinese over English, else ``en``.

    Honours q-values: ``en-US,en;q=0.9,zh;q=0.8`` is English; ``zh-CN,zh;q=0.9,en;q=0.8`` is Chinese.
    """
    best, best_q = "en", -1.0
    for i, part in enumerate((accept_language or "").split(",")):
        tag, _, params = part.strip().partition(";")
        base = tag.strip().lower().split("-")[0]
        if base not in LANGS:
            continue
        q = 1.0
        params = params.strip()
        if params.startswith("q="):
            try:
                q = float(params[2:])
            except ValueError:
                q = 0.0
        q -= i * 1e-6  # earlier wins a tie
        if q > best_q:
            best, best_q = base, q
    return best


def t(lang: str, key: str, **values: Any) -> str:
    en, zh = TEXTS[key]
    text = zh if lang == "zh" else en
    return text.format(**values) if values else text


# Gradio's own translations use keys such as "chatbot" (a namespace): ours carry a prefix.
I18N_PREFIX = "omnirag_"


def i18n_tables() -> dict[str, dict[str, str]]:
    """Per-language label tables for ``gr.I18n``, keyed ``I18N_PREFIX + key``."""
    return {lang: {I18N_PREFIX + k: TEXTS[k][i] for k in LABELS} for i, lang in enumerate(LANGS)}
