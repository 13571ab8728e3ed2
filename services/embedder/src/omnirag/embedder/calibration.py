"""Fixed int8 / uint8 calibration: the quantization ranges are a property of the model, not of a request.

sentence-transformers' ``quantize_embeddings`` without ``ranges`` takes each dimension's min and max
from the vectors it is given, so a text's bytes would depend on what else shares its request (and a
one-text request has min == max: a zero step). Here the ranges come once, at start-up, from the model's
vectors of a fixed set of texts that ships in this module (no download), and every request is quantized
with them, or with ranges the caller sends. The formula is sentence-transformers' own (6.3): bytes equal
``quantize_embeddings(vectors, precision, ranges=ranges)``, values outside the ranges in the end buckets.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Sequence

import numpy as np

# What people send to an assistant over team documents: questions and statements of several lengths,
# technical and everyday English, some Chinese (the seed's users), code, numbers and bare keywords.
# Changing this list changes every quantized vector the service returns: its sha256 is in /v1/info.
CALIBRATION_TEXTS: tuple[str, ...] = (
    "How do I reset my password?",
    "Where can I find the vacation policy?",
    "What is the deadline for submitting expense reports?",
    "Who approves purchase orders above ten thousand euros?",
    "How many days of paid leave do new employees get?",
    "Can I work remotely from another country for a month?",
    "What does the error 'connection refused' mean when I start the server?",
    "How do I configure the VPN on a Linux laptop?",
    "Which port does the gateway listen on?",
    "Why is my build failing with an out-of-memory error?",
    "Is there a template for the quarterly business review?",
    "When was the security policy last updated?",
    "What is retrieval-augmented generation?",
    "How does the retriever combine dense and sparse results?",
    "Explain the difference between cosine similarity and dot product.",
    "What are the side effects of ibuprofen?",
    "How long should I boil an egg for a soft yolk?",
    "What is the capital of Australia?",
    "Which planet has the most moons?",
    "How do vaccines train the immune system?",
    "What time does the office open on Saturdays?",
    "Is the cafeteria open during the holidays?",
    "How do I book a meeting room for twelve people?",
    "What is the refund policy for annual subscriptions?",
    "Can you summarize the incident report from last Tuesday?",
    "The gateway listens on port 8000 and forwards embedding requests to the embedder.",
    "Redis keeps the chat history of each session with a time to live.",
    "The retriever reloads a new index version without a restart.",
    "Every document records where it came from: a knowledge base or an upload.",
    "The nightly job rebuilds the search index at three in the morning.",
    "Binary quantization keeps one bit per dimension and compares vectors with the Hamming distance.",
    "int8 embeddings use a quarter of the memory of float32 embeddings.",
    "A vector database stores documents, their embeddings and their metadata.",
    "The model truncates its input at 256 tokens.",
    "Kubernetes restarts a container whose liveness probe fails three times in a row.",
    "Helm renders the chart's templates with the values file and applies the manifests.",
    "The invoice must include the purchase order number and the cost center.",
    "New employees receive their laptop on the first day and their badge within a week.",
    "Expense reports are due on the fifth working day of the following month.",
    "The finance team closes the books at the end of every quarter.",
    "Travel to conferences requires the approval of your manager and of the budget owner.",
    "The support desk answers tickets within four business hours.",
    "Customer data must never leave the European Union without a signed agreement.",
    "Passwords expire every ninety days and cannot repeat the last five.",
    "The warehouse ships orders placed before noon on the same day.",
    "Our mobile app crashes when the user rotates the screen during checkout.",
    "The legal department reviews every contract above fifty thousand dollars.",
    "Please restart the service after changing the configuration file.",
    "The meeting has been moved to Thursday at 10:30 in room 4B.",
    "The quarterly revenue grew by 12 percent compared with the same quarter last year.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The mitochondria produce most of the chemical energy that powers a cell.",
    "Water boils at 100 degrees Celsius at sea level.",
    "The French Revolution began in 1789 with the storming of the Bastille.",
    "Mount Everest is the highest mountain above sea level.",
    "The Great Barrier Reef is the largest coral reef system in the world.",
    "Shakespeare wrote Hamlet around the year 1600.",
    "A black hole is a region of spacetime where gravity prevents anything from escaping.",
    "The stock market fell sharply after the central bank raised interest rates.",
    "The recipe calls for two cups of flour, one egg and a pinch of salt.",
    "She walked her dog along the beach every morning before work.",
    "The train to Munich was delayed by forty minutes because of a signal failure.",
    "The children built a snowman in the garden after school.",
    "He repaired the bicycle's brakes and replaced the chain.",
    "The hotel offers free breakfast and a shuttle to the airport.",
    "Heavy rain is expected across the north of the country this weekend.",
    "The football match ended in a draw after extra time.",
    "The museum's new exhibition shows paintings from the Dutch golden age.",
    "I am sorry, but I cannot attend the workshop tomorrow.",
    "Thank you for your quick reply, that solved the problem.",
    "The patient reported mild headaches and trouble sleeping for two weeks.",
    "Regular exercise lowers the risk of heart disease and improves mood.",
    "The court ruled that the contract was void because one party had been misled.",
    "Tenants must give two months' notice before moving out.",
    "The company plans to open three new offices in Asia next year.",
    "Solar panels on the roof cover about half of the building's electricity needs.",
    "The algorithm runs in linear time and uses constant extra memory.",
    "A hash table maps keys to values with an average constant-time lookup.",
    "Gradient descent updates the weights in the direction that reduces the loss.",
    "The transformer architecture relies on self-attention instead of recurrence.",
    "TLS certificates must be renewed before they expire or browsers will refuse the connection.",
    "The database migration adds a nullable column and backfills it in batches.",
    "Set the environment variable before starting the process, otherwise the default is used.",
    "The unit tests pass locally but fail in continuous integration because of a timezone difference.",
    "Use a read replica for reports so that long queries do not slow down the primary.",
    "The API returns 429 with a Retry-After header when the client sends too many requests.",
    "Logs are kept for thirty days and then deleted automatically.",
    "Backups run every night and are tested by a monthly restore.",
    "def add(a, b):\n    return a + b",
    "SELECT name, email FROM users WHERE created_at > '2024-01-01' ORDER BY name;",
    "kubectl rollout restart deployment/omnirag-gateway -n omnirag",
    "pip install sentence-transformers==6.2.0",
    '{"input": "hello world", "model": "all-MiniLM-L6-v2"}',
    "ERROR 2024-05-03 14:22:07 worker: connection reset by peer (retrying in 2s)",
    "https://docs.example.com/getting-started/installation",
    "git commit -m 'fix: handle empty input in the splitter'",
    "invoice",
    "vacation policy",
    "VPN",
    "Kubernetes",
    "password reset",
    "quarterly report",
    "onboarding checklist",
    "GPU memory",
    "error 404",
    "meeting notes",
    "2024",
    "3.14159",
    "+49 30 1234567",
    "ISO 27001",
    "Q3 revenue",
    "yes",
    "no thanks",
    "hello",
    "Good morning, team!",
    "Congratulations on the launch!",
    "The onboarding guide explains how to request access to the code repository, how to set up the "
    "development environment with the provided scripts, and whom to ask when a step fails. It also lists "
    "the people on call for each service during the first week.",
    "Our travel policy covers flights, trains, hotels and meals. Economy class is the rule for flights "
    "under six hours; business class needs the approval of a director. Hotels should stay under the city's "
    "nightly limit, and receipts must be uploaded within thirty days of the trip.",
    "The retriever serves every collection it finds under its index root. When the CURRENT file of a "
    "collection changes, it loads the new version beside the old one and swaps it in, so no search fails "
    "during the change. Old versions are pruned after a grace period.",
    "Climate change is driven mainly by the burning of fossil fuels, which releases carbon dioxide into "
    "the atmosphere. Rising temperatures melt glaciers, raise sea levels and make heat waves, droughts "
    "and heavy rainfall more frequent in many regions of the world.",
    "The report found that customers who contacted support twice in the same week were three times more "
    "likely to cancel their subscription. It recommends routing repeat contacts to senior agents and "
    "following up by email within one day.",
    "In the first half of the year the plant produced 1.2 million units, 8% more than planned, while "
    "energy use per unit fell by 5%. Two unplanned stoppages, both caused by a faulty cooling pump, "
    "cost about 36 hours of production.",
    "To deploy the platform on a cluster, install the Helm chart with your values file, point the model "
    "download job at the models you need, and wait until every pod reports ready. The chart's notes "
    "explain how to reach the gateway and how to create the first API key.",
    "Symptoms of dehydration include thirst, dark urine, tiredness and dizziness. Drink water regularly "
    "during hot weather and exercise, and seek medical help if confusion or a rapid heartbeat appears.",
    "如何重置我的密码？",
    "年假有多少天？",
    "网关监听哪个端口？",
    "报销单需要在每月五号之前提交。",
    "检索增强生成把文档和大模型连在一起。",
    "向量数据库存储文档、向量和元数据。",
    "新员工第一天会领到笔记本电脑。",
    "明天下午三点在四楼会议室开会。",
    "北京是中国的首都，也是政治和文化中心。",
    "长江是亚洲最长的河流。",
    "这个服务在重启之后仍然无法连接数据库。",
    "请把季度报告发给财务部门。",
    "模型会在256个词元处截断输入。",
    "索引每天凌晨三点重建一次。",
    "谢谢你的帮助！",
    "上海的天气怎么样？",
    "机器学习是人工智能的一个分支，研究计算机如何从数据中学习规律并做出预测。",
    "该公司计划明年在亚洲开设三个新办事处，并招聘两百名工程师。",
    "Die Besprechung wurde auf Donnerstag verschoben.",
    "La réunion commence à dix heures dans la salle B.",
    "El informe trimestral está disponible en la intranet.",
    "Il treno per Milano è in ritardo di venti minuti.",
    "会議は木曜日の午後に変更されました。",
    "회의는 목요일 오후로 변경되었습니다.",
)


def calibration_digest(texts: Sequence[str] = CALIBRATION_TEXTS) -> str:
    """sha256 over the texts, so a client can tell whether two servers quantize alike."""
    h = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        h.update(len(data).to_bytes(4, "big"))
        h.update(data)
    return h.hexdigest()


def ranges_of(vectors: np.ndarray) -> np.ndarray:
    """Per-dimension (min, max) as a (2, dimension) float32 array, sentence-transformers' layout."""
    return np.vstack((vectors.min(axis=0), vectors.max(axis=0))).astype(np.float32)


class Calibration:
    """The model's vectors of :data:`CALIBRATION_TEXTS` and the ranges they give for each output shape.

    Ranges depend on what the request's vectors look like after truncation and normalization, so each
    (truncate_dim, normalize) pair gets ranges from the calibration vectors post-processed the same way
    (at most 2 x dimension pairs, each computed once)."""

    def __init__(
        self,
        vectors: np.ndarray,
        postprocess: Callable[[np.ndarray, int | None, bool], np.ndarray],
        texts: Sequence[str] = CALIBRATION_TEXTS,
    ) -> None:
        self.vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        self.texts = len(texts)
        self.sha256 = calibration_digest(texts)
        self._postprocess = postprocess
        self._cache: dict[tuple[int | None, bool], np.ndarray] = {}
        self._lock = threading.Lock()

    @property
    def dimension(self) -> int:
        return int(self.vectors.shape[1])

    def ranges(self, truncate_dim: int | None, normalize: bool) -> np.ndarray:
        key = (None if truncate_dim in (None, self.dimension) else truncate_dim, normalize)
        with self._lock:
            cached = self._cache.get(key)
            if cached is None:
                cached = ranges_of(self._postprocess(self.vectors, key[0], normalize))
                cached.flags.writeable = False
                self._cache[key] = cached
            return cached


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray) -> np.ndarray:
    """int8 / uint8 with fixed ranges, byte for byte ``quantize_embeddings(vectors, precision, ranges)``
    of sentence-transformers 6.3: floor of ``(x - min) / step`` clipped to 0..255, a zero step taken as 1.

    Written out rather than called because 6.2, which the package still admits, casts without clipping
    (a value above max wraps around to the lowest bucket) and divides by a zero step."""
    ranges = ranges.astype(np.float32, copy=False)
    starts = ranges[0, :]
    steps = (ranges[1, :] - starts) / 255
    steps = np.where(steps == 0, 1, steps)
    q_vals = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    if precision == "uint8":
        return q_vals.astype(np.uint8)
    if precision == "int8":
        return (q_vals - 128).astype(np.int8)
    raise ValueError(f"quantize() does int8 and uint8, not {precision!r}")
