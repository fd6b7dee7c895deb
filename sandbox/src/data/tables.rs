//! Static word lists the generator draws from: Kazakh personal names, merchants
//! with their MCCs, employers, utilities, city streets and coordinates.

/// Male given names (Latin transliteration).
pub(crate) const MALE_NAMES: &[&str] = &[
    "Askar",
    "Nurlan",
    "Yerlan",
    "Daniyar",
    "Arman",
    "Bauyrzhan",
    "Serik",
    "Timur",
    "Alibek",
    "Yerzhan",
    "Marat",
    "Dauren",
    "Azamat",
    "Sanzhar",
    "Aidos",
    "Kairat",
    "Zhandos",
    "Ruslan",
    "Madi",
    "Nursultan",
    "Olzhas",
    "Galym",
    "Berik",
    "Dmitry",
    "Sergey",
];

/// Female given names (Latin transliteration).
pub(crate) const FEMALE_NAMES: &[&str] = &[
    "Aigerim", "Aruzhan", "Dana", "Madina", "Saule", "Gulnara", "Zhanna", "Aliya", "Dinara",
    "Ainur", "Kamila", "Assel", "Togzhan", "Zarina", "Akbota", "Symbat", "Indira", "Meruyert",
    "Balzhan", "Yelena", "Olga", "Zhuldyz",
];

/// Surname stems: the male form adds `ov`/`ev`/`in` (kept in the stem), the female
/// form adds `a`; the `-uly`/`-kyzy` pairs are handled separately.
pub(crate) const SURNAMES: &[&str] = &[
    "Akhmetov",
    "Nurlanov",
    "Zhaksylykov",
    "Abenov",
    "Seitkaliev",
    "Bekov",
    "Kassymov",
    "Omarov",
    "Tokayev",
    "Suleimenov",
    "Ibraev",
    "Mukanov",
    "Sarsenbayev",
    "Dzhaksybekov",
    "Yessimov",
    "Utemisov",
    "Kenzhebekov",
    "Baimukhanov",
    "Ivanov",
    "Petrov",
    "Kim",
    "Li",
    "Tsoy",
];

/// Patronymic-style surname roots for `-uly` (son of) / `-kyzy` (daughter of).
pub(crate) const ULY_ROOTS: &[&str] = &["Serik", "Nurlan", "Marat", "Bolat", "Yerlan", "Askar"];

/// Card merchants: name, MCC, purchase amount range in KZT (whole tenge).
pub(crate) const MERCHANTS: &[(&str, u16, i64, i64)] = &[
    ("Magnum Cash&Carry", 5411, 1_500, 45_000),
    ("Small", 5411, 800, 12_000),
    ("Galmart", 5411, 2_000, 60_000),
    ("Арбуз.kz", 5411, 3_000, 40_000),
    ("Ramstore", 5411, 1_200, 30_000),
    ("Sulpak", 5732, 9_000, 450_000),
    ("Technodom", 5732, 9_000, 600_000),
    ("Mechta.kz", 5732, 5_000, 350_000),
    ("Yandex Go", 4121, 700, 6_500),
    ("Glovo", 5812, 2_500, 15_000),
    ("Wolt", 5812, 2_500, 15_000),
    ("Coffee BOOM", 5814, 900, 4_500),
    ("Del Papa", 5812, 6_000, 35_000),
    ("Кафе «Дастархан»", 5812, 3_000, 25_000),
    ("Аптека Europharma", 5912, 800, 20_000),
    ("Биосфера", 5912, 600, 15_000),
    ("Helios АЗС", 5541, 5_000, 25_000),
    ("Sinooil", 5541, 5_000, 25_000),
    ("Qazaq Oil", 5541, 5_000, 25_000),
    ("Air Astana", 4511, 35_000, 350_000),
    ("Kinopark 11 IMAX", 7832, 2_500, 9_000),
    ("Chaplin Cinemas", 7832, 2_500, 9_000),
    ("Meloman", 5942, 2_000, 25_000),
    ("LC Waikiki", 5651, 5_000, 60_000),
    ("Marwin", 5945, 3_000, 40_000),
    ("Lamoda.kz", 5691, 8_000, 90_000),
    ("Салон красоты «Айым»", 7230, 5_000, 30_000),
    ("Fitness Palace", 7997, 15_000, 45_000),
    ("Kaspi Магазин", 5399, 3_000, 200_000),
    ("Wildberries KZ", 5399, 2_000, 80_000),
];

/// Descriptions of a card purchase (Russian, Kazakh, English).
pub(crate) const PURCHASE_TEXT: &[&str] =
    &["Покупка", "Оплата картой", "Сатып алу", "Card purchase"];

/// Mobile, internet and utility payees: name, MCC, description.
pub(crate) const BILLERS: &[(&str, u16, &str)] = &[
    ("Kcell", 4814, "Мобильная связь"),
    ("Beeline Kazakhstan", 4814, "Мобильная связь"),
    ("Tele2/Altel", 4814, "Мобильная связь"),
    ("Kazakhtelecom", 4814, "Интернет и ТВ"),
    ("Алматы Су", 4900, "Коммунальные услуги: вода"),
    (
        "АлматыЭнергоСбыт",
        4900,
        "Коммунальные услуги: электроэнергия",
    ),
    ("Астана-ЕРЦ", 4900, "Коммунальные услуги"),
    ("Алсеко", 4900, "Коммунальные услуги"),
    ("КазТрансГаз Аймак", 4900, "Газоснабжение"),
];

/// Employers paying salaries.
pub(crate) const EMPLOYERS: &[&str] = &[
    "ТОО «Kazakhtelecom»",
    "АО «НК «КазМунайГаз»",
    "ТОО «Sulpak»",
    "ГУ «Аппарат акима г. Алматы»",
    "ТОО «Glovo Kazakhstan»",
    "АО «Эйр Астана»",
    "ТОО «Chocofamily»",
    "КГП «Городская поликлиника №5»",
    "ТОО «Kolesa Group»",
    "АО «Казахтелеком»",
];

/// People on the other side of person-to-person transfers.
pub(crate) const P2P: &[&str] = &[
    "Aigerim B.",
    "Нурлан С.",
    "Dana K.",
    "Ерлан Ж.",
    "Madina T.",
    "Арман Н.",
    "Saule O.",
    "Тимур А.",
    "Askar M.",
    "Гульнара Е.",
    "Daniyar R.",
    "Асель К.",
    "Zhanna S.",
    "Серик Б.",
];

/// Cities with centre coordinates and a street list.
pub(crate) const CITIES: &[(&str, f64, f64, &[&str])] = &[
    (
        "Almaty",
        43.2389,
        76.8897,
        &[
            "Abay Ave",
            "Dostyk Ave",
            "Al-Farabi Ave",
            "Tole Bi St",
            "Satpayev St",
            "Furmanov St",
            "Zhibek Zholy Ave",
            "Rozybakiev St",
            "Raiymbek Ave",
            "Timiryazev St",
        ],
    ),
    (
        "Astana",
        51.1605,
        71.4704,
        &[
            "Mangilik El Ave",
            "Kabanbay Batyr Ave",
            "Turan Ave",
            "Respublika Ave",
            "Kenesary St",
            "Syganak St",
            "Saryarka Ave",
            "Beibitshilik St",
        ],
    ),
    (
        "Shymkent",
        42.3417,
        69.5901,
        &[
            "Tauke Khan Ave",
            "Kazybek Bi St",
            "Respublika Ave",
            "Baitursynov St",
            "Kunayev Blvd",
            "Zhibek Zholy St",
        ],
    ),
];

/// Foreign currencies quoted against KZT with a mid rate in tiyn (1/100 KZT).
pub(crate) const FX: &[(&str, i64)] = &[
    ("USD", 51_250),
    ("EUR", 59_480),
    ("RUB", 645),
    ("CNY", 7_120),
    ("GBP", 68_910),
    ("KGS", 586),
    ("TRY", 1_290),
    ("AED", 13_950),
];
